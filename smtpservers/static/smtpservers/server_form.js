// SMTP server form: port reset and suggestion, live security warnings,
// OAuth 2.0 fields shown only for that authentication type.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const $ = (id) => document.getElementById(id);
  const port = $("id_port");
  const security = $("id_security");
  if (!port || !security) return;
  const suggested = JSON.parse(($("herald-suggested-ports") || {}).textContent || "{}");
  const verify = $("id_verify_certificate");
  const auth = $("id_auth_method");

  const reset = document.createElement("button");
  reset.type = "button";
  reset.className = "button";
  reset.textContent = "Reset to default (" + port.dataset.defaultPort + ")";
  reset.addEventListener("click", () => { port.value = port.dataset.defaultPort; });
  const hint = document.createElement("span");
  hint.className = "help herald-port-hint";
  port.after(reset, " ", hint);

  const sync = () => {
    const wanted = suggested[security.value];
    hint.textContent = wanted && String(wanted) !== port.value
      ? "The usual port for this encryption is " + wanted + "." : "";
    const tls = security.value !== "none";
    $("herald-verify-warning").hidden = !(tls && verify && !verify.checked);
    $("herald-insecure-auth-warning").hidden = tls || !auth || auth.value === "none";
    const oauth = document.querySelector("fieldset.herald-oauth");
    if (oauth && auth) oauth.hidden = auth.value !== "oauth2";
  };
  security.addEventListener("change", () => {
    // Follow the suggestion only while the port is still one of the usual ones.
    if (Object.values(suggested).map(String).includes(port.value)) {
      port.value = suggested[security.value];
    }
    sync();
  });
  [port, verify, auth].forEach((el) => el && el.addEventListener("input", sync));
  [verify, auth].forEach((el) => el && el.addEventListener("change", sync));
  sync();

  // POP before SMTP: the port follows its encryption while it is a usual one.
  const popPorts = JSON.parse(($("herald-pop-ports") || {}).textContent || "{}");
  const popSecurity = $("id_pop_security");
  const popPort = $("id_pop_port");
  if (popSecurity && popPort) {
    popSecurity.addEventListener("change", () => {
      if (Object.values(popPorts).map(String).includes(popPort.value)) {
        popPort.value = popPorts[popSecurity.value];
      }
    });
  }
});
