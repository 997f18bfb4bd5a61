//! config: placeholder until implemented.
