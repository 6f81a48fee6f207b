"""Loopback stand-ins for the services the tool talks to, following FACTS.md's protocol notes."""
