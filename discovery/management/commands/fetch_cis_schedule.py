"""``fetch_cis_schedule``: the name operators know for ``fetch_peer_schedule``."""

from discovery.management.commands.fetch_peer_schedule import Command as PeerCommand


class Command(PeerCommand):
    help = "Alias of fetch_peer_schedule. " + PeerCommand.help
