//! Ports a pod or external serves, written `tcp/80` or `{name: http, port: 8080, protocol: TCP}`.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer, Serialize};

/// A transport protocol the built-in servers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Err("SCTP is not served by the lab's built-in servers; use TCP or UDP".into()),
            _ => Err(format!("unknown protocol `{s}`, expected TCP or UDP")),
        }
    }
}

/// A served port, optionally named as Kubernetes container ports are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(with = "PortSchema")]
pub struct Port {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

impl FromStr for Port {
    type Err = String;
    /// `tcp/80` or `80/tcp`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s.split_once('/').ok_or_else(|| format!("`{s}` is not a port: expected `tcp/80` or `udp/53`"))?;
        let (protocol, port) = if a.chars().all(|c| c.is_ascii_digit()) { (b, a) } else { (a, b) };
        let protocol = protocol.parse()?;
        let port = parse_port_number(port)?;
        Ok(Port { name: None, port, protocol })
    }
}

fn parse_port_number(text: &str) -> Result<u16, String> {
    match text.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(n) => Err(format!("port {n} is out of range 1-65535")),
        Err(_) => Err(format!("`{text}` is not a port number")),
    }
}

/// The long form as written in YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LongPort {
    name: Option<String>,
    port: u32,
    #[serde(default = "LongPort::default_protocol")]
    protocol: String,
}

impl LongPort {
    fn default_protocol() -> String {
        "TCP".into()
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl<'de> Visitor<'de> for PortVisitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port such as `tcp/80` or `{name: http, port: 8080, protocol: TCP}`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Port, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Port, A::Error> {
                let long = LongPort::deserialize(MapAccessDeserializer::new(map))?;
                let port = parse_port_number(&long.port.to_string()).map_err(de::Error::custom)?;
                let protocol = long.protocol.parse().map_err(de::Error::custom)?;
                Ok(Port { name: long.name, port, protocol })
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

/// What the schema says of a port.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum PortSchema {
    /// `tcp/80`, `udp/53`, `80/tcp` (any case).
    Short(
        #[schemars(regex(
            pattern = r"^([Tt][Cc][Pp]|[Uu][Dd][Pp])/[0-9]{1,5}$|^[0-9]{1,5}/([Tt][Cc][Pp]|[Uu][Dd][Pp])$"
        ))]
        String,
    ),
    Long(LongPortSchema),
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct LongPortSchema {
    name: Option<String>,
    #[schemars(range(min = 1, max = 65535))]
    port: u16,
    /// TCP or UDP, in any case; TCP by default.
    #[schemars(regex(pattern = r"^([Tt][Cc][Pp]|[Uu][Dd][Pp])$"))]
    protocol: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_forms() {
        let ports: Vec<Port> =
            serde_yaml::from_str("[tcp/80, 53/udp, {name: http, port: 8080, protocol: TCP}, {port: 9}]").unwrap();
        let shown: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown, ["tcp/80", "udp/53", "tcp/8080", "tcp/9"]);
        assert_eq!(ports[2].name.as_deref(), Some("http"));
    }

    #[test]
    fn bad_ports_are_explained() {
        let err = serde_yaml::from_str::<Vec<Port>>("[tcp/70000]").unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
        let err = serde_yaml::from_str::<Vec<Port>>("[sctp/80]").unwrap_err().to_string();
        assert!(err.contains("SCTP"), "{err}");
        let err = serde_yaml::from_str::<Vec<Port>>("[{port: 80, proto: TCP}]").unwrap_err().to_string();
        assert!(err.contains("unknown field `proto`"), "{err}");
    }
}
