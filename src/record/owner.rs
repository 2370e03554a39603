//! Owner labels: name the objects that hold memory ("error value", "retry
//! closure", "result slot", a cache, a pool).
//!
//! Two ways to label:
//!
//! - a **scope** labels every block allocated inside it: those blocks *are*
//!   the labelled object;
//! - a **registration** labels an existing container: a `&'static` value
//!   (its own memory becomes a root whose pointers the scan follows) or an
//!   `Arc` (its heap block is labelled and rooted while the `Arc` lives).
//!   Registrations cannot dangle: a static lives forever, and an `Arc` is
//!   held weakly and skipped once dropped. Dropping the [`Registration`]
//!   unregisters.
//!
//! The reporter groups surviving memory by owner, and a heap-graph snapshot
//! attributes memory that a labelled object keeps alive (even if allocated
//! elsewhere) to that owner: the nearest labelled object above it in the
//! dominator tree.
//!
//! ```
//! static STORE: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());
//! let cache: Vec<u64> = leakprof::owner::scope("cache", || Vec::with_capacity(1024));
//! let registration = leakprof::owner::register("result store", &STORE);
//! # drop(registration); drop(cache);
//! ```

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::hooks;
use super::sys::{LockCell, LockCellGuard, RawLock};
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

enum Target {
    Static { addr: usize, len: usize },
    Heap(Weak<dyn Any + Send + Sync>),
}

struct Entry {
    id: u64,
    label: &'static str,
    type_name: &'static str,
    target: Target,
}

static REGISTRY: LockCell<Vec<Entry>> = LockCell::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn registry_lock() -> &'static RawLock {
    REGISTRY.raw()
}

/// A registered owner; dropping it unregisters. Keep it as long as the
/// container should count as an owner, or call [`Registration::forever`].
#[must_use = "dropping a Registration unregisters the owner at once"]
#[derive(Debug)]
pub struct Registration {
    id: u64,
}

impl Registration {
    /// Keeps the registration for the rest of the process.
    pub fn forever(self) {
        std::mem::forget(self);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.id;
        let removed = hooks::guarded(|| {
            let mut r = REGISTRY.lock();
            r.iter().position(|e| e.id == id).map(|i| r.swap_remove(i))
        });
        // The Weak (if any) is dropped outside the registry lock.
        hooks::guarded(|| drop(removed));
    }
}

fn add(label: &'static str, type_name: &'static str, target: Target) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    hooks::guarded(|| {
        REGISTRY.lock().push(Entry {
            id,
            label,
            type_name,
            target,
        })
    });
    Registration { id }
}

/// Registers a static container as an owner: a heap-graph scan reads its
/// memory as a root labelled `label`, and what it holds is owned by it.
pub fn register<T: ?Sized + Sync>(label: &'static str, object: &'static T) -> Registration {
    let addr = object as *const T as *const u8 as usize;
    add(
        label,
        std::any::type_name::<T>(),
        Target::Static {
            addr,
            len: std::mem::size_of_val(object),
        },
    )
}

/// Registers a shared heap object as an owner while it lives (held
/// weakly: the registration never keeps it alive).
pub fn register_arc<T: Send + Sync + 'static>(
    label: &'static str,
    object: &Arc<T>,
) -> Registration {
    let weak: Weak<dyn Any + Send + Sync> =
        hooks::guarded(|| Arc::downgrade(object) as Weak<dyn Any + Send + Sync>);
    add(label, std::any::type_name::<T>(), Target::Heap(weak))
}

/// A registered static area, as the scan needs it.
pub(crate) struct StaticArea {
    pub(crate) addr: usize,
    pub(crate) len: usize,
    pub(crate) label: &'static str,
    pub(crate) type_name: Option<&'static str>,
}

pub(crate) fn registered_statics() -> Vec<StaticArea> {
    REGISTRY
        .lock()
        .iter()
        .filter_map(|e| match e.target {
            Target::Static { addr, len } => Some(StaticArea {
                addr,
                len,
                label: e.label,
                type_name: Some(e.type_name),
            }),
            Target::Heap(_) => None,
        })
        .collect()
}

/// The registry, held for the duration of a scan.
pub(crate) struct RegistryGuard(LockCellGuard<'static, Vec<Entry>>);

pub(crate) fn lock_registry() -> RegistryGuard {
    RegistryGuard(REGISTRY.lock())
}

impl RegistryGuard {
    /// Registered heap objects still alive: (address inside the object,
    /// label, type name).
    pub(crate) fn heap_objects(
        &self,
    ) -> impl Iterator<Item = (usize, &'static str, Option<&'static str>)> + '_ {
        self.0.iter().filter_map(|e| match &e.target {
            Target::Heap(w) if w.strong_count() > 0 => Some((
                Weak::as_ptr(w) as *const u8 as usize,
                e.label,
                Some(e.type_name),
            )),
            _ => None,
        })
    }
}
