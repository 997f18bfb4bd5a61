//! app: placeholder until implemented.
