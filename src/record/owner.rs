//! Owner labels: name the objects that hold memory ("error value", "retry
//! closure", "result slot", a cache, a pool).
//!
//! A scope labels every block allocated inside it: those blocks *are* the
//! labelled object. The reporter groups surviving memory by owner, and a
//! heap-graph snapshot attributes memory that a labelled object keeps alive
//! (even if allocated elsewhere) to that owner.
//!
//! ```
//! let cache: Vec<u64> = leakprof::owner::scope("cache", || Vec::with_capacity(1024));
//! # drop(cache);
//! ```

use super::{current_tag, with_tag};

/// Runs `f` with its allocations labelled `label` (on top of the current
/// task and retry).
pub fn scope<R>(label: &'static str, f: impl FnOnce() -> R) -> R {
    with_tag(current_tag().label(label), f)
}

/// Like [`scope`], also recording the object's type name.
pub fn scope_typed<T, R>(label: &'static str, f: impl FnOnce() -> R) -> R {
    with_tag(
        current_tag()
            .label(label)
            .type_name(std::any::type_name::<T>()),
        f,
    )
}

/// Runs `f` with its allocations carrying `T`'s type name but no owner
/// label (for objects worth naming in retainer chains that are not owners
/// themselves).
pub fn typed<T, R>(f: impl FnOnce() -> R) -> R {
    with_tag(current_tag().type_name(std::any::type_name::<T>()), f)
}
