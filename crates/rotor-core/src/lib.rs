//! Sans-IO rotation core (placeholder; see issue 3).
