//! Published checksum test vectors, through the public API.

use vswitch_offload::checksum::{checksum, Checksum};

#[test]
fn rfc1071_section3_vector() {
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(Checksum::new().add_bytes(&data).sum(), 0xddf2);
    assert_eq!(checksum(&data), 0x220d);
}

#[test]
fn ipv4_header_vector() {
    // 4500 0028 1ffd 4000 8006 0000 c0a8 3b0a c0a8 3b32 -> 0xe345
    let header = [
        0x45, 0x00, 0x00, 0x28, 0x1f, 0xfd, 0x40, 0x00, 0x80, 0x06, 0x00, 0x00, 0xc0, 0xa8, 0x3b,
        0x0a, 0xc0, 0xa8, 0x3b, 0x32,
    ];
    assert_eq!(checksum(&header), 0xe345);
    let mut with_sum = header;
    with_sum[10..12].copy_from_slice(&0xe345u16.to_be_bytes());
    assert_eq!(
        checksum(&with_sum),
        0,
        "a header with its checksum sums to -0"
    );
}
