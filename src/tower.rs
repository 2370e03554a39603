//! A `tower` layer that tags every request or job (feature `tower`).
//!
//! Frameworks built on tower (apalis, axum, tonic) run each job or request
//! through a stack of services; [`TagLayer`] sits in that stack and runs
//! the inner service's `call` and every poll of its future under the tag a
//! user-supplied extractor reads from the request, so allocations are
//! attributed to their task and attempt without wrapping every handler:
//!
//! ```ignore
//! WorkerBuilder::new("jobs")
//!     .backend(storage)
//!     .retry(RetryPolicy::retries(3))
//!     // Inside the retry layer: each attempt passes through it.
//!     .layer(leakprof::tower::TagLayer::new(|task: &Task<Job, _, _>| {
//!         leakprof::Tag::task(task.args.id).retry(task.parts.attempt.current())
//!     }))
//!     .build(handle)
//! ```
//!
//! Placed inside a retry layer, the layer sees every attempt. It never
//! interns on the allocation path: the tag is interned once per request,
//! when `call` runs.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::record::{call_tagged, Tag, Tagged};

/// Tags each request with the [`Tag`] its extractor returns.
#[derive(Clone, Debug)]
pub struct TagLayer<E> {
    extract: E,
}

impl<E> TagLayer<E> {
    /// `extract` reads the task and attempt from a request (a closure
    /// `Fn(&Request) -> Tag`).
    pub fn new(extract: E) -> TagLayer<E> {
        TagLayer { extract }
    }
}

impl<S, E: Clone> Layer<S> for TagLayer<E> {
    type Service = TagService<S, E>;

    fn layer(&self, inner: S) -> TagService<S, E> {
        TagService {
            inner,
            extract: self.extract.clone(),
        }
    }
}

/// The service [`TagLayer`] wraps around the inner one.
#[derive(Clone, Debug)]
pub struct TagService<S, E> {
    inner: S,
    extract: E,
}

impl<S, E, Request> Service<Request> for TagService<S, E>
where
    S: Service<Request>,
    E: Fn(&Request) -> Tag,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Tagged<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Tagged<S::Future> {
        let tag = (self.extract)(&request);
        // What `call` allocates itself (boxing the future, cloning the
        // request's parts) belongs to the request too.
        call_tagged(tag, || self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    struct NoWake;

    impl Wake for NoWake {
        fn wake(self: Arc<Self>) {}
    }

    /// A service whose future reports the tag current while it is called
    /// and while it is polled.
    struct Probe;

    impl Service<(u64, usize)> for Probe {
        type Response = (Tag, Tag);
        type Error = ();
        type Future = std::pin::Pin<Box<dyn Future<Output = Result<(Tag, Tag), ()>>>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: (u64, usize)) -> Self::Future {
            let in_call = crate::current_tag();
            Box::pin(async move { Ok((in_call, crate::current_tag())) })
        }
    }

    #[test]
    fn call_and_polls_run_under_the_extracted_tag() {
        let layer = TagLayer::new(|r: &(u64, usize)| Tag::task(r.0).retry(r.1));
        let mut service = layer.layer(Probe);
        let mut future = pin!(service.call((7, 2)));
        let waker = Waker::from(Arc::new(NoWake));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(future.tag(), Tag::task(7u64).retry(2u32));
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
        // Tags are only looked up while a recorder runs (a unit test has
        // none): tests/apalis_worker.rs checks what a real worker records.
    }
}
