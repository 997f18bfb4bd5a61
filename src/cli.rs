//! cli: placeholder until implemented.
