//! Services and EndpointSlices for the lab, written as `kubectl get -o yaml`
//! would print them.

use std::net::Ipv4Addr;

/// A ClusterIP Service with one TCP and one UDP port of the same number, as
/// DNS has, and an EndpointSlice listing `endpoints` (address, ready).
pub fn service(name: &str, cluster_ip: &str, port: u16, endpoints: &[(Ipv4Addr, bool)]) -> String {
    let target = crate::lab::BACKEND_PORT;
    let mut eps = String::new();
    for (addr, ready) in endpoints {
        eps.push_str(&format!(
            "- addresses: [\"{addr}\"]\n  conditions:\n    ready: {ready}\n    serving: {ready}\n    terminating: false\n"
        ));
    }
    if eps.is_empty() {
        eps.push_str("[]\n");
        eps.insert_str(0, " ");
    }
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {cluster_ip}
  clusterIPs: ["{cluster_ip}"]
  ipFamilies: [IPv4]
  ports:
  - name: tcp
    port: {port}
    protocol: TCP
    targetPort: {target}
  - name: udp
    port: {port}
    protocol: UDP
    targetPort: {target}
  selector:
    app: {name}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abc12
  namespace: default
  labels:
    kubernetes.io/service-name: {name}
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
addressType: IPv4
ports:
- name: tcp
  port: {target}
  protocol: TCP
- name: udp
  port: {target}
  protocol: UDP
endpoints:
{eps}"#
    )
}
