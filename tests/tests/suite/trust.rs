//! Issue 12's trust tests (written below).
