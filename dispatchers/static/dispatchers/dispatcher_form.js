// Dispatcher form: the Twilio fields only for SMS dispatchers, the sender
// address only for EMAIL ones.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const type = document.getElementById("id_type");
  if (!type) return;
  const sync = () => {
    document.querySelectorAll("fieldset.herald-sms").forEach((el) => {
      el.hidden = type.value !== "SMS";
    });
    document.querySelectorAll("fieldset.herald-email").forEach((el) => {
      el.hidden = type.value !== "EMAIL";
    });
  };
  type.addEventListener("change", sync);
  sync();
});
