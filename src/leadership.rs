//! leadership: placeholder until implemented.
