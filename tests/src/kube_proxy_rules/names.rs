//! Chain names exactly as kube-proxy computes them, so the rules the
//! benchmark loads look (and hash, and sort) like a real node's.

use sha2::{Digest, Sha256};

/// RFC 4648 base32 with padding, as Go's `base32.StdEncoding`.
pub fn base32_std(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    for chunk in bytes.chunks(5) {
        let mut block = [0u8; 5];
        block[..chunk.len()].copy_from_slice(chunk);
        let bits = block.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        // Characters that carry input bits; the rest of the block is padding.
        let used = (chunk.len() * 8).div_ceil(5);
        for i in 0..8 {
            if i < used {
                out.push(ALPHABET[((bits >> (35 - i * 5)) & 31) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hash_prefix(input: &str, len: usize) -> String {
    let digest = Sha256::digest(input.as_bytes());
    base32_std(&digest)[..len].to_string()
}

/// kube-proxy's `ServicePortName.String()`: `namespace/name:port`, or
/// `namespace/name` for an unnamed port.
pub fn service_port_name(namespace: &str, name: &str, port_name: &str) -> String {
    if port_name.is_empty() {
        format!("{namespace}/{name}")
    } else {
        format!("{namespace}/{name}:{port_name}")
    }
}

/// iptables mode (pkg/proxy/iptables): `portProtoHash`, the 16 characters
/// after `KUBE-SVC-`, `KUBE-EXT-`, `KUBE-SVL-` and `KUBE-FW-`.
pub fn port_proto_hash(service_port_name: &str, protocol: &str) -> String {
    hash_prefix(&format!("{service_port_name}{protocol}"), 16)
}

pub fn iptables_svc_chain(service_port_name: &str, protocol: &str) -> String {
    format!("KUBE-SVC-{}", port_proto_hash(service_port_name, protocol))
}

pub fn iptables_ext_chain(service_port_name: &str, protocol: &str) -> String {
    format!("KUBE-EXT-{}", port_proto_hash(service_port_name, protocol))
}

/// `servicePortEndpointChainName`: the endpoint (`ip:port`) is hashed too.
pub fn iptables_sep_chain(service_port_name: &str, protocol: &str, endpoint: &str) -> String {
    format!("KUBE-SEP-{}", hash_prefix(&format!("{service_port_name}{protocol}{endpoint}"), 16))
}

/// nftables mode (pkg/proxy/nftables): `hashAndTruncate`, 8 hash characters
/// then the readable name, cut to fit nftables' name limit.
fn hash_and_truncate(name: &str) -> String {
    // knftables.NameLengthMax (256) minus the longest prefix (16).
    const BASE_MAX: usize = 256 - 16;
    let mut out = format!("{}-{name}", hash_prefix(name, 8));
    if out.len() > BASE_MAX {
        out.truncate(BASE_MAX - 3);
        out.push_str("...");
    }
    out
}

/// `servicePortChainNameBase`: `HASH-namespace/name/protocol/port`.
pub fn nft_service_base(namespace: &str, name: &str, protocol: &str, port_name: &str) -> String {
    hash_and_truncate(&format!("{namespace}/{name}/{protocol}/{port_name}"))
}

/// `servicePortEndpointChainNameBase`: `HASH-namespace/name/protocol/port__ip/port`.
pub fn nft_endpoint_base(namespace: &str, name: &str, protocol: &str, port_name: &str, ip: &str, port: u16) -> String {
    hash_and_truncate(&format!("{namespace}/{name}/{protocol}/{port_name}__{}/{port}", ip.replace(':', ".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "MY======"),
            ("fo", "MZXQ===="),
            ("foo", "MZXW6==="),
            ("foob", "MZXW6YQ="),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI======"),
        ] {
            assert_eq!(base32_std(input.as_bytes()), want, "{input:?}");
        }
    }

    /// Chain names from kube-proxy's own test expectations
    /// (pkg/proxy/iptables/proxier_test.go, TestOverallIPTablesRules).
    #[test]
    fn iptables_chain_names_match_kube_proxy() {
        let svc1 = service_port_name("ns1", "svc1", "p80");
        assert_eq!(iptables_svc_chain(&svc1, "tcp"), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(iptables_sep_chain(&svc1, "tcp", "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        let svc3 = service_port_name("ns3", "svc3", "p80");
        assert_eq!(iptables_svc_chain(&svc3, "tcp"), "KUBE-SVC-X27LE4BHSL4DOUIK");
        assert_eq!(iptables_ext_chain(&svc3, "tcp"), "KUBE-EXT-X27LE4BHSL4DOUIK");
        assert_eq!(iptables_sep_chain(&svc3, "tcp", "10.180.0.3:80"), "KUBE-SEP-OYPFS5VJICHGATKP");
        let svc4 = service_port_name("ns4", "svc4", "p80");
        assert_eq!(iptables_sep_chain(&svc4, "tcp", "10.180.0.4:80"), "KUBE-SEP-UKSFD7AGPMPPLUHC");
        assert_eq!(iptables_sep_chain(&svc4, "tcp", "10.180.0.5:80"), "KUBE-SEP-C6EBXVWJJZMIWKLZ");
    }

    /// From pkg/proxy/nftables/proxier_test.go (TestOverallNFTablesRules).
    #[test]
    fn nftables_chain_names_match_kube_proxy() {
        assert_eq!(nft_service_base("ns1", "svc1", "tcp", "p80"), "ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(nft_service_base("ns3", "svc3", "tcp", "p80"), "4AT6LBPK-ns3/svc3/tcp/p80");
        assert_eq!(nft_endpoint_base("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80), "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80");
        assert_eq!(nft_endpoint_base("ns4", "svc4", "tcp", "p80", "10.180.0.5", 80), "5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80");
    }
}
