//! Renderers: small modules over the analysis model.
