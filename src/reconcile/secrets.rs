//! Where certificate material goes besides the state directory: the trait and its types
//! are defined in [`crate::sources::secrets`], next to their Kubernetes implementation;
//! reconcile uses them from here.

pub use crate::sources::secrets::*;
