//! Node and Pod condition bookkeeping, as the kubelet does it, on the
//! `k8s-openapi` types:
//!
//! - [`stamp`]: a freshly observed condition gets its `lastTransitionTime`
//!   kept while its status holds (else now), and its heartbeat (Node) or
//!   probe (Pod) time set when the caller checked it;
//! - [`merge`] and [`set`]: what the API server holds after a strategic
//!   merge of conditions (merge key `type`), in apimachinery's order.

mod condition;
mod merge;
mod stamp;

pub use condition::{Condition, parse, status_of};
pub use merge::{merge, set};
pub use stamp::{Check, stamp, time};

pub use k8s_openapi::api::core::v1::{NodeCondition, PodCondition};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
