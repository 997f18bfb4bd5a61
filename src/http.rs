//! http: placeholder until implemented.
