-- wrk script for scenario 5: the SSO server's form POST to the sign-in callback.
wrk.method = "POST"
wrk.body = "token=bench-one-time-sso-token"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
