"""The clouds' own APIs: importing a connection's settings from the cloud (`vpnd import`).

One module per cloud, named for it; each vendor SDK is optional (an extra, `vpnd[alibaba]`) and
imported only when a command needs it, so `vpnd check` and `vpnd run` never load one.
"""
