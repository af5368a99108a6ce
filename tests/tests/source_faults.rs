//! The API server going away and coming back, with the agent as the
//! DaemonSet starts it: traffic keeps its backends while the API is gone,
//! `/healthz` turns unready once the watches have failed for 60 s (as the
//! README and the DaemonSet's probes promise), and a change made after the
//! API returns reaches the maps within seconds. Needs root.

mod common;

use std::time::{Duration, Instant};

use common::{api_lab, http_get, SYNC_TIMEOUT};
use proxy_lab::lab::wait_until;
use proxy_lab::manifests::ServiceSpec;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Summary};

fn healthz(lab: &Lab) -> (u16, serde_json::Value) {
    let (status, body) = http_get(&lab.nodes[0].ns, "http://127.0.0.1:10256/healthz").unwrap();
    (status, serde_json::from_str(&body).unwrap_or_default())
}

#[test]
fn the_api_server_going_away_makes_the_node_unready_and_its_return_is_followed_at_once() {
    if !require_root("the_api_server_going_away_makes_the_node_unready_and_its_return_is_followed_at_once") {
        return;
    }
    let (lab, api) = api_lab(&["web-1", "web-2"]);
    let web = |pods: &[&str]| ServiceSpec::new("web", "10.96.0.10", 80).on_pods(&lab, pods).yaml();
    lab.kubectl_apply(&web(&["web-1"])).unwrap();
    let agent = lab.start_agent_on_api(0).expect("agent");
    agent.wait_synced(1, SYNC_TIMEOUT).expect("first sync");
    let client = lab.pod("client-a").ns.clone();
    let answered = |lab: &Lab| Summary::of(&lab.requests(&client, "tcp", "10.96.0.10:80", 10, 1000).unwrap());
    assert_eq!(healthz(&lab).0, 200);

    api.kill();
    let gone = Instant::now();
    // Still served from what was programmed, and still ready for a while.
    let s = answered(&lab);
    assert_eq!((s.failed, s.by_backend.keys().map(String::as_str).collect::<Vec<_>>()), (0, vec!["web-1"]), "{s:?}");
    std::thread::sleep(Duration::from_secs(50));
    assert_eq!(healthz(&lab).0, 200, "unready before the 60 s: {:?}", healthz(&lab).1);
    let unready = wait_until(Duration::from_secs(20), || healthz(&lab).0 == 503);
    let (status, body) = healthz(&lab);
    println!("API server gone {:?}: /healthz {status} {body}", gone.elapsed());
    assert!(unready.is_ok(), "still ready {:?} after the API server went away: {body}", gone.elapsed());
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("watch of") && reason.contains("failing for"), "{reason}");
    let s = answered(&lab);
    assert_eq!(s.failed, 0, "traffic stopped with the API server: {s:?}");

    // Back, with a change made at once: the new endpoint answers within seconds.
    let _api = lab.start_apiserver().expect("API server again");
    let back = Instant::now();
    lab.kubectl_apply(&web(&["web-2"])).unwrap();
    let followed = wait_until(Duration::from_secs(10), || answered(&lab).by_backend.keys().any(|b| b == "web-2"));
    println!("the change reached the datapath {:?} after the API server came back", back.elapsed());
    assert!(followed.is_ok(), "the change was not followed within 10 s:\n{}", agent.own_log());
    assert!(back.elapsed() < Duration::from_secs(5), "took {:?}", back.elapsed());
    let ready = wait_until(Duration::from_secs(5), || healthz(&lab).0 == 200);
    assert!(ready.is_ok(), "{:?}", healthz(&lab));
}
