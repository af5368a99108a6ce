//! The parts of a discovery.k8s.io/v1 EndpointSlice that the model reads,
//! which is all the agent keeps of each slice it watches. A full
//! `k8s_openapi` Endpoint is 352 bytes before any of its strings, mostly
//! fields no proxy looks at (targetRef, hostname, deprecatedTopology...),
//! and a label map costs a tree node of ~550 bytes however few labels it
//! holds; at ten thousand slices of ten endpoints that was over 40 MiB.

use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointHints, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::LABEL_SERVICE_NAME;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(from = "RawSlice")]
pub struct Slice {
    /// Without labels: the one the model reads is `service`.
    pub metadata: ObjectMeta,
    /// The `kubernetes.io/service-name` label: the Service it belongs to.
    pub service: Option<String>,
    pub address_type: String,
    pub ports: Option<Vec<EndpointPort>>,
    pub endpoints: Option<Vec<SliceEndpoint>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceEndpoint {
    /// The first of `addresses`: consumers use that one only (EndpointSlice API).
    pub address: Option<String>,
    pub conditions: Option<EndpointConditions>,
    pub node_name: Option<String>,
    /// Boxed: most endpoints have none.
    pub hints: Option<Box<EndpointHints>>,
}

/// What the API sends, before it is trimmed to a [`Slice`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSlice {
    #[serde(default)]
    metadata: ObjectMeta,
    address_type: String,
    ports: Option<Vec<EndpointPort>>,
    endpoints: Option<Vec<RawEndpoint>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    conditions: Option<EndpointConditions>,
    node_name: Option<String>,
    hints: Option<EndpointHints>,
}

impl From<RawSlice> for Slice {
    fn from(raw: RawSlice) -> Self {
        let mut metadata = raw.metadata;
        let service = metadata.labels.take().and_then(|mut labels| labels.remove(LABEL_SERVICE_NAME));
        Slice {
            metadata,
            service,
            address_type: raw.address_type,
            ports: raw.ports,
            endpoints: raw.endpoints.map(|endpoints| {
                endpoints
                    .into_iter()
                    .map(|ep| SliceEndpoint {
                        address: ep.addresses.into_iter().next(),
                        conditions: ep.conditions,
                        node_name: ep.node_name,
                        hints: ep.hints.map(Box::new),
                    })
                    .collect()
            }),
        }
    }
}

impl From<&EndpointSlice> for Slice {
    fn from(slice: &EndpointSlice) -> Self {
        Slice::from(RawSlice {
            metadata: slice.metadata.clone(),
            address_type: slice.address_type.clone(),
            ports: slice.ports.clone(),
            endpoints: slice.endpoints.as_ref().map(|endpoints| {
                endpoints
                    .iter()
                    .map(|ep| RawEndpoint {
                        addresses: ep.addresses.clone(),
                        conditions: ep.conditions.clone(),
                        node_name: ep.node_name.clone(),
                        hints: ep.hints.clone(),
                    })
                    .collect()
            }),
        })
    }
}
