"""The exchange feature (protocol §8): `feature.py` wires it, `api.py` holds its routes,
`requests.py` its service, `money.py` the exact arithmetic shared with the exchange service."""
