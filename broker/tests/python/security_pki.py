"""Throwaway certificates for test_security.py, made with the openssl CLI in
a temporary directory (nothing here is ever committed).

    trusted CA  -> server certificate (SAN IP:127.0.0.1, DNS:localhost)
                -> client certificate of carol (subject O=Sluice Tests, CN=carol)
    rogue CA    -> client certificate of mallory (the broker does not trust it)

Keys are P-256 (fast to make); certificates last a day.
"""

import os
import subprocess

OPENSSL_TIMEOUT_S = 30
DAYS = "1"


def _openssl(*args, cwd):
    out = subprocess.run(
        ["openssl", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=OPENSSL_TIMEOUT_S,
    )
    assert out.returncode == 0, f"openssl {' '.join(args)} failed:\n{out.stderr.decode()}"


def _key(name, cwd):
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}-key.pem", cwd=cwd)


def _ca(name, subject, cwd):
    _key(name, cwd)
    _openssl(
        "req", "-x509", "-new", "-key", f"{name}-key.pem", "-sha256", "-days", DAYS,
        "-subj", subject, "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=cwd,
    )


def _leaf(name, subject, ca, extensions, cwd):
    """A key and a certificate signed by ca, with the given v3 extensions."""
    _key(name, cwd)
    _openssl("req", "-new", "-key", f"{name}-key.pem", "-subj", subject, "-out", f"{name}.csr", cwd=cwd)
    with open(os.path.join(cwd, f"{name}.ext"), "w") as f:
        f.write(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem",
        "-CAcreateserial", "-days", DAYS, "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        cwd=cwd,
    )


class Pki:
    """Paths of the PEM files made in directory `root`."""

    def __init__(self, root):
        self.root = root
        os.makedirs(root, exist_ok=True)
        _ca("ca", "/O=Sluice Tests/CN=Sluice Test CA", root)
        _ca("rogue-ca", "/O=Sluice Tests/CN=Rogue CA", root)
        _leaf(
            "server", "/O=Sluice Tests/CN=localhost", "ca",
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
            root,
        )
        client_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
        _leaf("carol", "/O=Sluice Tests/CN=carol", "ca", client_ext, root)
        _leaf("mallory", "/O=Sluice Tests/CN=mallory", "rogue-ca", client_ext, root)

    def path(self, name):
        p = os.path.join(self.root, name)
        assert os.path.exists(p), p
        return p

    @property
    def ca(self):
        return self.path("ca.pem")

    @property
    def server_cert(self):
        return self.path("server.pem")

    @property
    def server_key(self):
        return self.path("server-key.pem")

    def client(self, name):
        """(certificate, key) of a client: "carol" (trusted) or "mallory" (rogue)."""
        return self.path(f"{name}.pem"), self.path(f"{name}-key.pem")


# RFC 2253 form of carol's subject: the last RDN of the certificate first.
CAROL_PRINCIPAL = "User:CN=carol,O=Sluice Tests"
