//! HTTP/2 by hand (RFC 9113, RFC 7541): frames and header blocks a client library would not
//! write, and the frames a server sent, read back.

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame fits");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in pairs {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// An HPACK integer with an N-bit prefix; `flags` fills the bits above the prefix.
pub fn hpack_int(prefix_bits: u8, flags: u8, value: usize) -> Vec<u8> {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        return vec![flags | u8::try_from(value).expect("below the prefix")];
    }
    let mut out = vec![flags | u8::try_from(max).expect("prefix")];
    let mut rest = value - max;
    while rest >= 128 {
        out.push(u8::try_from(rest % 128).expect("7 bits") | 0x80);
        rest /= 128;
    }
    out.push(u8::try_from(rest).expect("7 bits"));
    out
}

fn hpack_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = hpack_int(7, 0, bytes.len());
    out.extend_from_slice(bytes);
    out
}

/// A literal header field without indexing, new name, no Huffman coding.
pub fn hpack_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(hpack_string(name));
    out.extend(hpack_string(value));
    out
}

/// A header block for `GET path` (`:scheme http`, `:authority api.test`) plus `extra` fields.
pub fn request_block(method: &str, path: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    match method {
        "GET" => out.push(0x82),
        "POST" => out.push(0x83),
        other => {
            // Literal without indexing, indexed name 2 (:method).
            out.push(0x02);
            out.extend(hpack_string(other.as_bytes()));
        }
    }
    out.push(0x86); // :scheme http
    out.push(0x04); // :path, literal value
    out.extend(hpack_string(path.as_bytes()));
    out.push(0x01); // :authority, literal value
    out.extend(hpack_string(b"api.test"));
    for (name, value) in extra {
        out.extend(hpack_literal(name, value));
    }
    out
}

/// One received frame.
#[derive(Debug, Clone)]
pub struct H2Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Splits bytes the server sent into frames (a truncated last frame is dropped).
pub fn parse_frames(bytes: &[u8]) -> Vec<H2Frame> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest.len() < 9 + len {
            break;
        }
        frames.push(H2Frame {
            kind: rest[3],
            flags: rest[4],
            stream: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff,
            payload: rest[9..9 + len].to_vec(),
        });
        rest = &rest[9 + len..];
    }
    frames
}

/// The error code of the first GOAWAY, if any.
pub fn goaway_code(frames: &[H2Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == GOAWAY && f.payload.len() >= 8)
        .map(|f| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]))
}

/// Error codes of RST_STREAM frames.
pub fn reset_codes(frames: &[H2Frame]) -> Vec<u32> {
    frames
        .iter()
        .filter(|f| f.kind == RST_STREAM && f.payload.len() == 4)
        .map(|f| u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]))
        .collect()
}

/// Names of the HTTP/2 error codes that appear in these tests.
pub fn h2_error(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        _ => "other",
    }
}
