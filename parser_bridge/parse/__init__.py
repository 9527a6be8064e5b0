"""The parse feature (protocol §7): `feature.py` wires it, `api.py` holds its routes,
`requests.py` its service, `result.py` the job and result formats shared with the worker."""
