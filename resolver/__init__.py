"""classguard's resolver: DNS listeners, the resolver chain, the cache and the upstreams."""
