"""The D-Bus adapter: org.wkd1 on the system bus (docs/dbus-api.md, dbus/org.wkd1.xml).

    api          the API definition, read from org.wkd1.xml: names, paths, signatures,
                 descriptors, authorization
    members      binds interface classes to that definition (dbus-fast decorators)
    connection   the bus connection: descriptors, admission, call context, for every message
    call         one call: its context, authorization first, error mapping, passed secrets
    authz        who is calling (the bus) and may they (polkit)
    limits       the bounds that keep one client from degrading service for others
    options      bus arguments -> the typed values of wkd.values / wkd.model
    calls        the operations behind the methods: decode, call the backend, publish
    interfaces   org.wkd1.Manager
    tree         the object tree: org.wkd1.Volume objects, ObjectManager signals
    jobs         org.wkd1.Job objects and their bounds
    ports        what the adapter needs from the rest of wkd (the Engine satisfies it)
    service      serve(): connect, export, take the name last; stop in order

Never imports the engine, the disk layer or the HSM backends.
"""
