//! Lists of address ranges: `--trusted-proxy` here, and `herald
//! wakeup-proxy --allow`.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Address ranges in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`); a bare
/// address stands for itself alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cidrs(Vec<IpNet>);

impl Cidrs {
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Cidrs, String> {
        items
            .iter()
            .map(|item| {
                let text = item.as_ref().trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        format!("bad address range {text:?}: expected CIDR such as 10.0.0.0/8")
                    })
            })
            .collect::<Result<_, _>>()
            .map(Cidrs)
    }

    /// Whether `ip` is in a range. An IPv4 address mapped into IPv6 (how a
    /// dual-stack socket shows an IPv4 peer) counts as the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A range that covers a whole address family (`0.0.0.0/0`, `::/0`).
    pub fn covers_everything(&self) -> bool {
        self.0.iter().any(|net| net.prefix_len() == 0)
    }
}

impl fmt::Display for Cidrs {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (at, net) in self.0.iter().enumerate() {
            if at > 0 {
                out.write_str(", ")?;
            }
            write!(out, "{net}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("literal")
    }

    #[test]
    fn ranges_bare_addresses_and_mapped_ipv4() {
        let cidrs = Cidrs::parse(&["10.1.2.3/8", "192.0.2.7", " 2001:db8::/32 "]).expect("parses");
        assert_eq!(cidrs.to_string(), "10.0.0.0/8, 192.0.2.7/32, 2001:db8::/32");
        for inside in [
            "10.255.0.1",
            "192.0.2.7",
            "2001:db8:ffff::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(cidrs.contains(ip(inside)), "{inside}");
        }
        for outside in ["11.0.0.1", "192.0.2.8", "2001:db9::1", "::ffff:11.0.0.1"] {
            assert!(!cidrs.contains(ip(outside)), "{outside}");
        }
        assert!(!cidrs.covers_everything());
        assert!(Cidrs::parse(&["::/0"]).expect("parses").covers_everything());
        assert!(Cidrs::default().is_empty());
        assert!(!Cidrs::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn nonsense_is_refused_with_its_text() {
        for bad in ["10.0.0.0/33", "10.0.0", "example.net", "", "10.0.0.0/8/8"] {
            let error = Cidrs::parse(&[bad]).expect_err(bad);
            assert!(error.contains(&format!("{:?}", bad.trim())), "{error}");
        }
    }
}
