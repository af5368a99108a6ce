//! A lab backend: answers every TCP line and every UDP datagram with
//! `<pod name> <address:port it saw the request come from>`, so a test can
//! tell which backend answered and whether the client's address survived.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().ok_or_else(|| anyhow::anyhow!("usage: lab-backend NAME PORT"))?;
    let port: u16 = args.next().ok_or_else(|| anyhow::anyhow!("usage: lab-backend NAME PORT"))?.parse()?;

    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    let udp_name = name.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("{udp_name} {peer}\n").as_bytes(), peer);
        }
    });

    let tcp = TcpListener::bind(("0.0.0.0", port))?;
    eprintln!("{name} listening on tcp+udp {port}");
    for stream in tcp.incoming() {
        let Ok(mut stream) = stream else { continue };
        let name = name.clone();
        std::thread::spawn(move || {
            let Ok(peer) = stream.peer_addr() else { return };
            let Ok(read_half) = stream.try_clone() else { return };
            for line in BufReader::new(read_half).lines() {
                if line.is_err() || stream.write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}
