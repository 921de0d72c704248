"""The lab's hosts: certificates, secret files, and a simulated lab on one machine (network namespaces).

``labpipe.lab.netns`` makes the namespaces and links, ``labpipe.lab.certs`` the CA and host certificates,
``labpipe.lab.secretenv`` turns ``NAME_FILE`` variables into ``NAME`` before a service starts, and
``labpipe.lab.simulate`` brings up what each lab host runs inside its namespace (docs/lab.md).
"""
