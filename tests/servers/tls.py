"""Throw-away TLS material for the servers' TLS tests (openssl, from scripts/install-servers.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["make_certificates"]


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a server and a client certificate it signed (for 127.0.0.1), with openssl."""
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key",
                                                           "client", "client-key")}  # fmt: skip

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tenure-ca",
        "-keyout", str(files["ca-key"]), "-out", str(files["ca"]))  # fmt: skip
    extensions = directory / "ext.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        csr = directory / f"{name}.csr"
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(files[f"{name}-key"]), "-out", str(csr))  # fmt: skip
        run("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey",
            str(files["ca-key"]), "-CAcreateserial", "-days", "2", "-extfile", str(extensions),
            "-out", str(files[name]))  # fmt: skip
    return files
