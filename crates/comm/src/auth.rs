//! Mutual challenge/response on every new connection, so that only
//! processes holding the job token can join or inject data. The token never
//! crosses the wire: each side proves it with an HMAC-SHA256 over both
//! sides' fresh nonces.

use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 8] = b"HUDDLE\x00\x01";
const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;

/// Why a handshake failed, before it is given a rank and address.
#[derive(Debug)]
pub(crate) enum AuthFailure {
    Io(std::io::Error),
    NotHuddle,
    /// The other side's proof does not match our token.
    WrongToken,
    /// The other side refused our proof.
    Refused,
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthFailure::Io(e) => write!(f, "connection failed during the handshake: {e}"),
            AuthFailure::NotHuddle => {
                write!(f, "the other side does not speak the huddle protocol")
            }
            AuthFailure::WrongToken => {
                write!(
                    f,
                    "the other side does not know this job's token (HUDDLE_JOB_TOKEN differs)"
                )
            }
            AuthFailure::Refused => {
                write!(
                    f,
                    "the other side refused our job token (HUDDLE_JOB_TOKEN differs)"
                )
            }
        }
    }
}

impl From<std::io::Error> for AuthFailure {
    fn from(e: std::io::Error) -> Self {
        AuthFailure::Io(e)
    }
}

fn mac(token: &[u8], role: u8, first: &[u8], second: &[u8]) -> [u8; MAC_LEN] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(token).unwrap_or_else(|_| unreachable!());
    m.update(MAGIC);
    m.update(&[role]);
    m.update(first);
    m.update(second);
    m.finalize().into_bytes().into()
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::fill(&mut n);
    n
}

fn read_hello(s: &mut impl Read) -> Result<[u8; NONCE_LEN], AuthFailure> {
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(AuthFailure::NotHuddle);
    }
    let mut n = [0u8; NONCE_LEN];
    s.read_exact(&mut n)?;
    Ok(n)
}

/// The connecting side. The acceptor proves itself first, so a client with
/// a wrong token learns it without revealing a proof of its own.
pub(crate) fn connect<S: Read + Write>(s: &mut S, token: &[u8]) -> Result<(), AuthFailure> {
    let mine = nonce();
    s.write_all(MAGIC)?;
    s.write_all(&mine)?;
    let theirs = read_hello(s)?;
    let mut proof = [0u8; MAC_LEN];
    s.read_exact(&mut proof)?;
    if !constant_time_eq(&proof, &mac(token, b'A', &mine, &theirs)) {
        return Err(AuthFailure::WrongToken);
    }
    s.write_all(&mac(token, b'C', &theirs, &mine))?;
    let mut verdict = [0u8; 1];
    s.read_exact(&mut verdict)?;
    if verdict[0] != 1 {
        return Err(AuthFailure::Refused);
    }
    Ok(())
}

/// The accepting side.
pub(crate) fn accept<S: Read + Write>(s: &mut S, token: &[u8]) -> Result<(), AuthFailure> {
    let theirs = read_hello(s)?;
    let mine = nonce();
    s.write_all(MAGIC)?;
    s.write_all(&mine)?;
    s.write_all(&mac(token, b'A', &theirs, &mine))?;
    let mut proof = [0u8; MAC_LEN];
    s.read_exact(&mut proof)?;
    let ok = constant_time_eq(&proof, &mac(token, b'C', &mine, &theirs));
    s.write_all(&[u8::from(ok)])?;
    if ok {
        Ok(())
    } else {
        Err(AuthFailure::WrongToken)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn pair(
        client_token: &'static [u8],
        server_token: &'static [u8],
    ) -> (Result<(), AuthFailure>, Result<(), AuthFailure>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            accept(&mut s, server_token)
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let client = connect(&mut c, client_token);
        drop(c);
        (client, server.join().unwrap())
    }

    #[test]
    fn same_token_passes_both_ways() {
        let (c, s) = pair(b"secret", b"secret");
        assert!(c.is_ok() && s.is_ok());
    }

    #[test]
    fn different_token_fails_on_both_sides() {
        let (c, s) = pair(b"secret", b"other");
        assert!(matches!(c, Err(AuthFailure::WrongToken)));
        assert!(s.is_err());
    }
}
