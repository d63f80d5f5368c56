"""Fleet provisioning commands: `ca`, `broker-files`, `keys`, `flash`, `revoke`.

    edgespec ca init [--dir DIR] [--dns NAME ...] [--ip IP ...] [--force]
    edgespec ca crl [--dir DIR] [--broker-dir DIR] [reload options]
    edgespec broker-files init [--dir DIR] [--ca-dir DIR] [--verifier NAME ...]
                               [--dashboard NAME ...] [--prefix P] [ports, --bind, --user]
    edgespec keys init|rotate|list [--home DIR]      edgespec keys retire KEY_ID [--home DIR]
    edgespec flash DEVICE_ID --out DIR --broker URL [--broker-dir DIR] [--ca-dir DIR]
                   [--home DIR] [--cert] [--force] [--pid-file FILE | --mosquitto-pid PID]
    edgespec revoke DEVICE_ID [--broker-dir DIR] [--ca-dir DIR] [--home DIR]
                   [--pid PID | --pid-file FILE]

Three places hold state (see broker/README.md, "Provisioning a fleet"):

* the **CA folder** (`ca init`): ca.crt, ca.key, server.crt/.key, ca.crl and
  `issued-certs.json`, the index of device certificates (so `revoke` can put their serials on
  the CRL);
* the **broker folder** (`broker-files init`): what Mosquitto reads (`BrokerFiles.in_dir`:
  passwd, acl, ca.crt, server.crt/.key, ca.crl, data/), the rendered `mosquitto.conf`,
  `broker.json` (the ACL policy and listener settings, so later commands agree with it) and
  `credentials/<service>.password`; by default it is also the CA folder;
* the **fleet home** (`keys init`, `--home`, default `$EDGESPEC_HOME` or ~/.edgespec/dev): the
  verifier's key ring and the `FleetRegistry` of device public keys.

Every command prints what it did in one or two lines and turns expected failures into one
`edgespec <command>: error: ...` line and exit status 2.
"""

from .ca_broker import cmd_broker_files_init, cmd_ca_crl, cmd_ca_init
from .cli import main, register
from .common import (BROKER_SETTINGS, CONFIG_FILE, CREDENTIALS_DIR, DEFAULT_BROKER_DIR,
                     DEFAULT_DASHBOARDS, DEFAULT_PORTS, DEFAULT_VERIFIERS, EXIT_USER_ERROR,
                     ISSUED_INDEX, ProvisioningError)
from .devices import cmd_flash, cmd_revoke
from .keys import cmd_keys_init, cmd_keys_list, cmd_keys_retire, cmd_keys_rotate
from .state import BrokerSettings, IssuedRecord

__all__ = [
    "BROKER_SETTINGS", "CONFIG_FILE", "CREDENTIALS_DIR", "DEFAULT_BROKER_DIR", "DEFAULT_DASHBOARDS",
    "DEFAULT_PORTS", "DEFAULT_VERIFIERS", "EXIT_USER_ERROR", "ISSUED_INDEX", "BrokerSettings",
    "IssuedRecord", "ProvisioningError", "cmd_broker_files_init", "cmd_ca_crl", "cmd_ca_init",
    "cmd_flash", "cmd_keys_init", "cmd_keys_list", "cmd_keys_retire", "cmd_keys_rotate",
    "cmd_revoke", "main", "register",
]
