//! The one grammar of MAC address flags (`aa:bb:cc:dd:ee:ff`), pure.

/// Parses a unicast MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!(
            "bad MAC address {s:?}: expected six hex bytes separated by ':'"
        ));
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).map_err(|_| format!("bad MAC address {s:?}"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!("MAC address {s:?} is a multicast address"));
    }
    Ok(mac)
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff` (lower case, as `ip` and `nft` print it).
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let mac = parse_mac("02:56:50:4E:4f:01").unwrap();
        assert_eq!(mac, [0x02, 0x56, 0x50, 0x4e, 0x4f, 0x01]);
        assert_eq!(format_mac(&mac), "02:56:50:4e:4f:01");
        assert!(
            parse_mac("01:00:00:00:00:01")
                .unwrap_err()
                .contains("multicast")
        );
        assert!(parse_mac("02:00:00").unwrap_err().contains("six hex bytes"));
        assert!(parse_mac("02:00:00:00:00:zz").is_err());
    }
}
