"""The certificates of a PVE cluster, made as pve-cluster's PVE/Cluster/Setup.pm makes them:
a cluster CA in /etc/pve/pve-root-ca.pem, and each node's pve-ssl.pem signed by it, for
CN=<node>, with the names pveproxy answers to (IP:127.0.0.1, IP:::1, DNS:localhost,
DNS:<node>). Not in any system trust store: a client trusts the CA file or nothing."""

import os
import subprocess


def make(config_dir: str, node: str = "pve1") -> tuple[str, str]:
    """The node's (certificate, key) paths; the CA is at config_dir/pve-root-ca.pem."""
    ca, ca_key = f"{config_dir}/pve-root-ca.pem", f"{config_dir}/priv/pve-root-ca.key"
    folder = f"{config_dir}/nodes/{node}"
    cert, key, csr = f"{folder}/pve-ssl.pem", f"{folder}/pve-ssl.key", f"{folder}/pve-ssl.csr"
    os.makedirs(f"{config_dir}/priv", exist_ok=True)
    os.makedirs(folder, exist_ok=True)

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            "-subj", "/CN=Proxmox Virtual Environment/OU=lab/O=PVE Cluster Manager CA",
            "-keyout", ca_key, "-out", ca)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj",
            f"/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN={node}",
            "-keyout", key, "-out", csr)
    ext = f"{folder}/san.cnf"
    with open(ext, "w") as f:
        f.write(f"subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:{node}\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "730", "-extfile", ext, "-out", cert)
    for path in (csr, ext):
        os.remove(path)
    return cert, key
