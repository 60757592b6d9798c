"""`dicomvec serve`: the search page over dicomvec.search (Flask, server-rendered)."""
