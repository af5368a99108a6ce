//! The resource types served and their names.

/// The resource types served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Services, Resource::EndpointSlices, Resource::Nodes];

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
        }
    }
    pub fn singular(self) -> &'static str {
        match self {
            Resource::Services => "service",
            Resource::EndpointSlices => "endpointslice",
            Resource::Nodes => "node",
        }
    }
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }
    pub fn list_kind(self) -> String {
        format!("{}List", self.kind())
    }
    /// "" for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io",
            _ => "",
        }
    }
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
    pub fn namespaced(self) -> bool {
        self != Resource::Nodes
    }
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Resource::Services => &["svc"],
            Resource::EndpointSlices => &[],
            Resource::Nodes => &["no"],
        }
    }
    /// "services" or "endpointslices.discovery.k8s.io", as in error messages.
    pub fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }
    /// The resource served under `group` (`""` for core) with this plural.
    pub fn find(group: &str, plural: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.group() == group && r.plural() == plural)
    }
}
