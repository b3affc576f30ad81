"""Protocol fakes for the hosted Redux APIs, served on 127.0.0.1 by stdlib ThreadingHTTPServer."""
