"""DescribeVpnConnection responses shaped as the vendor documents them (the VPC API 2016-04-28
models: tunnel options' EnableDpd/EnableNatTraversal, lifetimes and ASNs are strings there,
VcoHealthCheck's Interval/Retry integers), for the import tests. Addresses are test ranges:
198.18.0.0/15 public, 172.16.0.0/16 on premises, 192.168.0.0/16 the VPC.
"""

from __future__ import annotations

import copy
from typing import Any

PSK_1 = "Imp0rted-Key-Tunnel-One"      # distinctive, so a test can grep output for them
PSK_2 = "Imp0rted-Key-Tunnel-Two"


def _tunnel(i: int, psk: str, *, bgp: bool) -> dict[str, Any]:
    n = i + 1
    t: dict[str, Any] = {
        "CustomerGatewayId": f"cgw-p0wy363lucf1uyae{n}****",
        "EnableDpd": "true",
        "EnableNatTraversal": "true",
        "InternetIp": f"198.19.0.{n}",
        "Role": "master" if i == 0 else "slave",
        "State": "active",
        "Status": "ipsec_sa_established",
        "TunnelId": f"tun-opsqc4d97wni2{n}****",
        "TunnelIndex": n,
        "ZoneNo": f"cn-hangzhou-{'ij'[i]}",
        "TunnelIkeConfig": {
            "IkeAuthAlg": "sha256",
            "IkeEncAlg": "aes",
            "IkeLifetime": "86400",
            "IkeMode": "main",
            "IkePfs": "group14",
            "IkeVersion": "ikev2",
            "LocalId": f"198.19.0.{n}",
            "Psk": psk,
            "RemoteId": "198.18.0.2",
        },
        "TunnelIpsecConfig": {
            "IpsecAuthAlg": "sha256",
            "IpsecEncAlg": "aes256",
            "IpsecLifetime": "3600",
            "IpsecPfs": "group14",
        },
    }
    if bgp:
        t["TunnelBgpConfig"] = {
            "BgpStatus": "success",
            "LocalAsn": "45104",
            "LocalBgpIp": f"169.254.{n}0.1",
            "PeerAsn": "65530",
            "PeerBgpIp": f"169.254.{n}0.2",
            "TunnelCidr": f"169.254.{n}0.0/30",
        }
    return t


def dual_tunnel(*, bgp: bool = False, health_check: bool = True,
                local_subnet: str = "0.0.0.0/0", remote_subnet: str = "0.0.0.0/0") -> dict[str, Any]:
    """A dual-tunnel connection: destination routing (0.0.0.0/0 both sides) unless subnets
    are given; BGP on both tunnels with `bgp`; the connection's health check with
    `health_check`. The tunnels are listed standby first, as nothing promises an order."""
    body: dict[str, Any] = {
        "AttachInstanceId": "",
        "AttachType": "VPNGW",
        "CreateTime": 1492753817000,
        "CrossAccountAuthorized": False,
        "CustomerGatewayId": "",
        "EffectImmediately": True,
        "EnableDpd": True,
        "EnableNatTraversal": True,
        "EnableTunnelsBgp": bgp,
        "InternetIp": "",
        "LocalSubnet": local_subnet,
        "Name": "vpc1 to office",
        "NetworkType": "public",
        "RemoteSubnet": remote_subnet,
        "RequestId": "F2310D45-BCF6-4E2E-9082-B4503844BA4C",
        "ResourceGroupId": "rg-acfmzs372yg****",
        "Spec": "1000M",
        "State": "active",
        "Status": "ipsec_sa_established",
        "TunnelBandwidth": "1000M",
        "VpnConnectionId": "vco-bp1bbi27hojx80nck****",
        "VpnGatewayId": "vpn-bp1q8bgx4xnkm2ogj****",
        "ZoneNo": "cn-hangzhou-h",
        "TunnelOptionsSpecification": {
            "TunnelOptions": [_tunnel(1, PSK_2, bgp=bgp), _tunnel(0, PSK_1, bgp=bgp)],
        },
    }
    if health_check:
        body["VcoHealthCheck"] = {
            "Dip": "172.16.20.80", "Enable": "true", "Interval": 3, "Policy": "revoke_route",
            "Retry": 3, "Sip": "192.168.10.10", "Status": "success",
        }
    else:
        body["VcoHealthCheck"] = {"Enable": "false"}
    return body


def single_tunnel() -> dict[str, Any]:
    """A single-tunnel connection: the connection-level IkeConfig/IpsecConfig, no tunnels."""
    return {
        "CustomerGatewayId": "cgw-bp1mvj4g9kogwwcxk****",
        "EnableDpd": True,
        "EnableNatTraversal": True,
        "InternetIp": "198.19.0.1",
        "LocalSubnet": "192.168.0.0/16",
        "RemoteSubnet": "172.16.0.0/16",
        "Name": "ipsec1",
        "Status": "ipsec_sa_established",
        "VpnConnectionId": "vco-bp1bbi27hojx80nck****",
        "VpnGatewayId": "vpn-bp1q8bgx4xnkm2ogj****",
        "IkeConfig": {"IkeAuthAlg": "sha1", "IkeEncAlg": "aes", "IkeLifetime": 86400,
                      "IkeMode": "main", "IkePfs": "group2", "IkeVersion": "ikev1",
                      "LocalId": "198.19.0.1", "Psk": PSK_1, "RemoteId": "198.18.0.2"},
        "IpsecConfig": {"IpsecAuthAlg": "sha1", "IpsecEncAlg": "aes", "IpsecLifetime": 86400,
                        "IpsecPfs": "group2"},
        "VcoHealthCheck": {"Enable": "false"},
        "VpnBgpConfig": {"EnableBgp": "false"},
    }


def with_tunnel(body: dict[str, Any], index: int, **changes: Any) -> dict[str, Any]:
    """A copy with one tunnel's fields changed: `TunnelIkeConfig={"IkePfs": "group5"}`
    updates that sub-table; other keys replace the tunnel's own."""
    body = copy.deepcopy(body)
    tuns = sorted(body["TunnelOptionsSpecification"]["TunnelOptions"],
                  key=lambda t: t["TunnelIndex"])
    for key, value in changes.items():
        if isinstance(value, dict):
            tuns[index].setdefault(key, {}).update(value)
        else:
            tuns[index][key] = value
    return body


def from_config(conn) -> dict[str, Any]:
    """The response the cloud would give for a connection configured with the same values as
    vpnd's `conn` (a ConnectionConfig): what the lab's cloud is, in the documented shape."""
    enc = {"aes128": "aes"}
    hc = conn.health_check
    body = dual_tunnel(bgp=conn.routing == "bgp", health_check=hc is not None)
    body["Name"] = conn.name
    body["EnableTunnelsBgp"] = conn.routing == "bgp"
    if conn.routing == "policy":
        body["LocalSubnet"] = ",".join(map(str, conn.remote_networks))
        body["RemoteSubnet"] = ",".join(map(str, conn.local_networks))
    if hc is not None:
        body["VcoHealthCheck"].update(Sip=str(hc.destination), Dip=str(hc.source),
                                      Interval=max(1, round(hc.interval)), Retry=hc.retries,
                                      Policy="revoke_route" if hc.switch_route else "reserve_route")
    tuns = sorted(body["TunnelOptionsSpecification"]["TunnelOptions"], key=lambda t: t["TunnelIndex"])
    for t, tc in zip(tuns, conn.tunnels):
        t["InternetIp"] = str(tc.remote_address)
        t["EnableDpd"] = "true" if conn.dpd_delay else "false"
        t["EnableNatTraversal"] = "true" if conn.nat_traversal else "false"
        t["TunnelIkeConfig"].update(
            IkeVersion=f"ikev{conn.ike.version}", IkeMode=conn.ike.mode,
            IkeEncAlg=enc.get(conn.ike.encryption, conn.ike.encryption),
            IkeAuthAlg=conn.ike.integrity, IkePfs=conn.ike.dh_group,
            IkeLifetime=str(conn.ike.lifetime), LocalId=tc.remote_id, RemoteId=tc.local_id,
            Psk=tc.psk.reveal())
        t["TunnelIpsecConfig"].update(
            IpsecEncAlg=enc.get(conn.ipsec.encryption, conn.ipsec.encryption),
            IpsecAuthAlg=conn.ipsec.integrity, IpsecPfs=conn.ipsec.pfs_group,
            IpsecLifetime=str(conn.ipsec.lifetime))
        if conn.routing == "bgp" and tc.bgp is not None:
            t["TunnelBgpConfig"].update(
                LocalAsn=str(conn.bgp.peer_asn), PeerAsn=str(conn.bgp.local_asn),
                TunnelCidr=str(tc.bgp.tunnel_cidr), LocalBgpIp=str(tc.bgp.peer_ip),
                PeerBgpIp=str(tc.bgp.local_ip))
    body["TunnelOptionsSpecification"]["TunnelOptions"] = list(reversed(tuns))
    return body
