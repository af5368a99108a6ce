//! The node's network devices as they come and go, from rtnetlink: a full
//! listing, then every change. Pods' devices appear and vanish all the time;
//! the agent attaches to them as they do.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;

use crate::attachments::Link;

#[derive(Debug)]
pub enum LinkEvent {
    /// Every link there is now. Comes first, and again after the
    /// subscription had to be renewed (changes may have been missed).
    Listing(Vec<Link>),
    /// Added, or changed (renamed, up, down: netlink does not say which).
    Changed(Link),
    Removed(Link),
}

/// Follows the links of the agent's network namespace. The subscription is
/// made before the listing, so nothing falls between the two.
pub fn watch() -> mpsc::UnboundedReceiver<LinkEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match follow(&tx).await {
                Ok(()) => return, // the agent stopped listening
                Err(error) => {
                    tracing::error!(%error, "following network devices failed; listing them again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    rx
}

async fn follow(tx: &mpsc::UnboundedSender<LinkEvent>) -> anyhow::Result<()> {
    let (events_conn, _events_handle, mut events) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
    let events_task = AbortOnDrop(tokio::spawn(events_conn));
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let _conn_task = AbortOnDrop(tokio::spawn(conn));
    let listing: Vec<Link> = handle
        .link()
        .get()
        .execute()
        .try_filter_map(|msg| async move { Ok(link_of(&msg)) })
        .try_collect()
        .await?;
    if tx.send(LinkEvent::Listing(listing)).is_err() {
        return Ok(());
    }
    while let Some((message, _)) = events.next().await {
        let event = match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(msg)) => link_of(&msg).map(LinkEvent::Changed),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(msg)) => link_of(&msg).map(LinkEvent::Removed),
            // An overrun socket (ENOBUFS) lost events: list again.
            NetlinkPayload::Error(error) => anyhow::bail!("netlink error on the link subscription: {error:?}"),
            _ => None,
        };
        if let Some(event) = event {
            if tx.send(event).is_err() {
                return Ok(());
            }
        }
    }
    drop(events_task);
    anyhow::bail!("the link subscription ended")
}

fn link_of(msg: &LinkMessage) -> Option<Link> {
    let name = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })?;
    let master = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    });
    let veth = msg.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    });
    Some(Link {
        index: msg.header.index,
        name,
        master,
        veth,
    })
}

/// `ip route get`: the device the node sends packets for an address out of.
pub struct RouteLookup {
    handle: rtnetlink::Handle,
    _conn: AbortOnDrop,
}

impl RouteLookup {
    pub fn new() -> anyhow::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok(RouteLookup {
            handle,
            _conn: AbortOnDrop(tokio::spawn(conn)),
        })
    }

    /// The output device for `addr`; `None` when the node has no route.
    pub async fn device_for(&self, addr: Ipv4Addr) -> Option<u32> {
        let query = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(addr, 32).build();
        let mut answers = self.handle.route().get(query).execute();
        let route = answers.try_next().await.ok()??;
        route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(index) => Some(*index),
            _ => None,
        })
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
