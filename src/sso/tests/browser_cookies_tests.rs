use crate::sso::browser_cookies::*;
use http::HeaderMap;
use std::time::Duration;

#[test]
fn reads_a_cookie_among_many_headers() {
    let mut h = HeaderMap::new();
    h.append(
        http::header::COOKIE,
        "a=1; dg_sso_state=xyz.abc".parse().unwrap(),
    );
    h.append(http::header::COOKIE, "dg_sso_loop=2.100".parse().unwrap());
    assert_eq!(read(&h, STATE).as_deref(), Some("xyz.abc"));
    assert_eq!(read(&h, LOOP).as_deref(), Some("2.100"));
    assert_eq!(read(&h, CARRY), None);
}

#[test]
fn cookie_attributes_follow_scheme() {
    let https = CookieWriter { https: true };
    assert_eq!(
        https.set(STATE, "v", "/", STATE_TTL, Site::CrossSite),
        "__Host-dg_sso_state=v; Path=/; Max-Age=600; HttpOnly; SameSite=None; Secure"
    );
    assert_eq!(
        https.set(ID_TOKEN, "v", "/signin", ID_TOKEN_TTL, Site::Lax),
        "__Secure-dg_sso_idt=v; Path=/signin; Max-Age=86400; HttpOnly; SameSite=Lax; Secure"
    );
    assert_eq!(
        https.clear(LOOP, "/"),
        "__Host-dg_sso_loop=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure"
    );
    let http = CookieWriter { https: false };
    assert_eq!(
        http.set(STATE, "v", "/", STATE_TTL, Site::CrossSite),
        "dg_sso_state=v; Path=/; Max-Age=600; HttpOnly; SameSite=Lax"
    );
    assert_eq!(
        http.clear(LOOP, "/"),
        "dg_sso_loop=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
    );
}

/// Over HTTPS a bare-named cookie may have been planted by a sibling subdomain: it is not read.
#[test]
fn https_reads_only_host_prefixed_cookies() {
    let mut h = HeaderMap::new();
    h.append(
        http::header::COOKIE,
        "dg_sso_loop=3.100; dg_sso_f_0123abcd=planted; __Host-dg_sso_f_89abcdef=ours"
            .parse()
            .unwrap(),
    );
    let https = CookieWriter { https: true };
    assert_eq!(https.read(&h, LOOP), None);
    assert_eq!(
        https.flow_cookies(&h),
        vec![("dg_sso_f_89abcdef".to_string(), "ours".to_string())]
    );
    let http = CookieWriter { https: false };
    assert_eq!(http.read(&h, LOOP).as_deref(), Some("3.100"));
    assert_eq!(http.flow_cookies(&h).len(), 1);
}

#[test]
fn loop_count_window() {
    let now = 1_000_000;
    assert_eq!(
        LoopCount::parse(None, now),
        LoopCount {
            count: 0,
            since: now
        }
    );
    let l = LoopCount::parse(Some("2.999990"), now);
    assert_eq!(l.count, 2);
    assert!(!l.exhausted());
    assert_eq!(
        l.bumped(now),
        ("3.999990".to_string(), Duration::from_secs(50))
    );
    assert!(LoopCount::parse(Some("3.999990"), now).exhausted());
    // An old window starts over; garbage and future stamps too.
    assert_eq!(LoopCount::parse(Some("3.999900"), now).count, 0);
    assert_eq!(LoopCount::parse(Some("x.y"), now).count, 0);
    assert_eq!(LoopCount::parse(Some("3.2000000"), now).count, 0);
}
