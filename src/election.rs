//! election: placeholder until implemented.
