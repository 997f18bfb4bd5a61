//! store: placeholder until implemented.
