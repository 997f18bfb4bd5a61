//! executor: placeholder until implemented.
