//! What changed between two reads of a manifest directory, Service by
//! Service, so a sync recomputes only those (as the Kubernetes source's
//! events do) instead of every Service the directory holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use crate::model::{slice_owner, ServiceName, ServiceObjects, Slice};

/// A directory's Services and their IPv4 slices, by Service name. The first
/// Service of a name wins, as in the model; a name may have slices and no
/// Service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ByService(BTreeMap<ServiceName, (Option<Arc<Service>>, Vec<Arc<Slice>>)>);

impl ByService {
    pub fn group(services: &[Arc<Service>], slices: &[Arc<Slice>]) -> Self {
        let mut by = BTreeMap::new();
        for svc in services {
            by.entry(ServiceName::of(svc)).or_insert_with(|| (Some(svc.clone()), Vec::new()));
        }
        for slice in slices {
            if let Some((namespace, name)) = slice_owner(slice) {
                by.entry(ServiceName::new(namespace, name)).or_insert_with(|| (None, Vec::new())).1.push(slice.clone());
            }
        }
        ByService(by)
    }

    /// The Services whose objects differ from `before`'s, as they are now
    /// (a Service gone from the directory comes with none).
    pub fn changed_since(&self, before: &ByService) -> Vec<ServiceObjects> {
        let mut changed = Vec::new();
        for (name, now) in &self.0 {
            if before.0.get(name) != Some(now) {
                changed.push(ServiceObjects { name: name.clone(), service: now.0.clone(), slices: now.1.clone() });
            }
        }
        for name in before.0.keys().filter(|name| !self.0.contains_key(name)) {
            changed.push(ServiceObjects { name: name.clone(), service: None, slices: Vec::new() });
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Config, LiveModel};
    use crate::source::{yaml_dir, Snapshot};

    fn service(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{clusterIP: {ip}, ports: [{{port: 80, protocol: TCP}}]}}\n"
        )
    }

    fn slice(name: &str, service: &str, addresses: &[&str]) -> String {
        let endpoints: Vec<String> = addresses.iter().map(|a| format!("{{addresses: [\"{a}\"]}}")).collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             ports: [{{port: 8080, protocol: TCP}}]\nendpoints: [{}]\n",
            endpoints.join(", ")
        )
    }

    fn read(documents: &[String]) -> (Vec<Arc<Service>>, Vec<Arc<Slice>>) {
        let mut snapshot = Snapshot::default();
        yaml_dir::parse_documents(&documents.join("---\n"), "test.yaml", &mut snapshot, &mut Vec::new());
        let slices = snapshot.slices.iter().map(|s| Arc::new(Slice::from(&**s))).collect();
        (snapshot.services, slices)
    }

    fn group(documents: &[String]) -> ByService {
        let (services, slices) = read(documents);
        ByService::group(&services, &slices)
    }

    fn names(changed: &[ServiceObjects]) -> Vec<(&str, bool)> {
        changed.iter().map(|c| (c.name.name.as_str(), c.service.is_some())).collect()
    }

    fn base() -> Vec<String> {
        vec![
            service("web", "10.96.0.10"),
            slice("web-1", "web", &["10.244.1.10", "10.244.2.10"]),
            service("api", "10.96.0.20"),
            slice("api-1", "api", &["10.244.1.20"]),
        ]
    }

    #[test]
    fn nothing_changed_means_no_service_to_recompute() {
        assert!(group(&base()).changed_since(&group(&base())).is_empty());
    }

    #[test]
    fn an_endpoint_change_names_only_its_service() {
        let mut now = base();
        now[1] = slice("web-1", "web", &["10.244.1.10", "10.244.2.11"]);
        assert_eq!(names(&group(&now).changed_since(&group(&base()))), [("web", true)]);
    }

    #[test]
    fn a_deleted_service_comes_without_objects() {
        let now = vec![base()[0].clone(), base()[1].clone()];
        let changed = group(&now).changed_since(&group(&base()));
        assert_eq!(names(&changed), [("api", false)]);
        assert!(changed[0].slices.is_empty());
    }

    #[test]
    fn a_relabelled_slice_changes_both_services() {
        let mut now = base();
        now[3] = slice("api-1", "web", &["10.244.1.20"]);
        assert_eq!(names(&group(&now).changed_since(&group(&base()))), [("api", true), ("web", true)]);
    }

    #[test]
    fn the_first_service_of_a_name_wins_as_in_the_model() {
        let mut now = base();
        now.push(service("web", "10.96.0.99"));
        assert!(group(&now).changed_since(&group(&base())).is_empty());
    }

    /// Updating a live model with the changed Services gives the model a
    /// full rebuild from the new directory gives.
    #[test]
    fn updating_with_the_changes_equals_starting_over() {
        let config = Config::default();
        let (services, slices) = read(&base());
        let mut live = LiveModel::default();
        live.replace_all(&services, &slices, &config);
        let mut now = base();
        now[1] = slice("web-1", "web", &["10.244.1.11"]);
        now.remove(2);
        now.push(service("new", "10.96.0.30"));
        now.push(slice("new-1", "new", &["10.244.2.30"]));
        live.update(&group(&now).changed_since(&group(&base())));
        let (services, slices) = read(&now);
        let mut fresh = LiveModel::default();
        fresh.replace_all(&services, &slices, &config);
        assert_eq!(live.model(), fresh.model());
        assert_eq!(live.model().frontends.len(), 2, "web and new; api's slice alone makes no frontend");
    }
}
