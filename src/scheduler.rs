//! scheduler: placeholder until implemented.
