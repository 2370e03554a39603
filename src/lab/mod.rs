//! The worker lab: a Dramatiq-faithful worker that runs the seed scenarios
//! under the recorder.
