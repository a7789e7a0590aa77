"""The WebSocket/HTTP adapter (aiohttp) around the node.

``app`` builds the application; ``ws`` owns each socket (upgrade, reader, writer, closes);
``effects`` executes what a socket's session asks for (function gates included);
``rest`` serves REST broadcasts; ``ops`` health and metrics; ``inspector`` the /inspector page
and its stats; ``state`` what they share.
"""
