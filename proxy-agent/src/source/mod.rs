//! Where Services and EndpointSlices come from.

pub mod dir_changes;
pub mod kube;
pub mod watch_health;
pub mod yaml_dir;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{ServiceObjects, Slice};

/// Everything a source currently knows. Shared with the source's stores, so
/// taking a snapshot for a sync copies pointers, not objects.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
}

/// What a sync has to look at.
pub enum Changes {
    /// Everything the source holds.
    All { services: Vec<Arc<Service>>, slices: Vec<Arc<Slice>> },
    /// These Services' objects as they are now; nothing else changed.
    Services(Vec<ServiceObjects>),
}
