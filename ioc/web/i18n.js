// The wall's words in Vietnamese (the default) and English, and the locale-aware formatting of numbers,
// dates and ages. Times are always shown in Asia/Ho_Chi_Minh, whatever the browser's own zone.

export const TIME_ZONE = "Asia/Ho_Chi_Minh";
export const LANGUAGES = ["vi", "en"];
const LOCALES = { vi: "vi-VN", en: "en-GB" };

const STRINGS = {
  vi: {
    title: "Trung tâm Điều hành thông minh",
    otherLanguage: "English",
    otherLanguageLabel: "Switch to English",
    login: "Đăng nhập trực ban",
    logout: "Đăng xuất",
    operator: "Trực ban: {name}",
    live: "Trực tuyến",
    connecting: "Đang kết nối…",
    stale: "Mất kết nối",
    locked: "Cần mã truy cập",
    staleBanner: "Mất kết nối luồng dữ liệu trực tiếp. Số liệu có thể đã cũ — đang tự động kết nối lại…",
    kpisTitle: "Chỉ số chính",
    alertsTitle: "Cảnh báo",
    areasTitle: "Địa bàn",
    sourcesTitle: "Hệ thống nguồn dữ liệu",
    noAlerts: "Không có cảnh báo nào đang hoạt động.",
    noSources: "Chưa nhận được dữ liệu từ hệ thống nào.",
    "firing.other": "{count} đang cảnh báo",
    "pending.other": "{count} chờ",
    "acknowledged.other": "{count} đã xác nhận",
    "silences.other": "{count} lệnh tắt tiếng",
    "alerts.other": "{count} cảnh báo",
    mapTitle: "Bản đồ xã, phường",
    worstTitle: "Xã, phường cần chú ý",
    noWorst: "Mọi xã, phường đều bình thường.",
    "state.pending": "Chờ kích hoạt",
    "state.firing": "Đang cảnh báo",
    "state.acknowledged": "Đã xác nhận",
    "state.silenced": "Đã tắt tiếng",
    "state.resolved": "Đã khắc phục",
    "severity.critical": "Nghiêm trọng",
    "severity.warning": "Cảnh báo",
    "severity.info": "Thông tin",
    "severity.none": "Bình thường",
    ackedBy: "Xác nhận bởi {by} lúc {at}",
    startedAt: "Bắt đầu {at} ({age})",
    resolvedAt: "Khắc phục lúc {at}",
    value: "Giá trị: {value}",
    ack: "Xác nhận",
    unack: "Bỏ xác nhận",
    silence: "Tắt tiếng",
    loginTitle: "Đăng nhập trực ban",
    tokenLabel: "Mã truy cập (token) của trực ban",
    loginSubmit: "Đăng nhập",
    viewerTitle: "Mã truy cập màn hình",
    viewerHelp: "Màn hình này chỉ hiển thị số liệu khi có mã truy cập (token) được cấp cho người xem.",
    viewerTokenLabel: "Mã truy cập (token) của người xem",
    viewerSubmit: "Xem",
    cancel: "Hủy",
    tokenInvalid: "Mã truy cập không hợp lệ.",
    tokenNotOperator: "Mã này không phải của trực ban.",
    loggedIn: "Đã đăng nhập: {name}",
    loggedOut: "Đã đăng xuất.",
    needLogin: "Cần đăng nhập trực ban để thực hiện thao tác này.",
    silenceTitle: "Tắt tiếng cảnh báo",
    silenceMatchers: "Áp dụng cho các cảnh báo có nhãn:",
    duration: "Thời hạn",
    comment: "Lý do",
    commentPlaceholder: "Ví dụ: bảo trì trạm BTN0123",
    silenceSubmit: "Tắt tiếng",
    acked: "Đã xác nhận cảnh báo.",
    unacked: "Đã bỏ xác nhận cảnh báo.",
    silenced: "Đã tắt tiếng đến {end}.",
    requestFailed: "Không thực hiện được: {error}",
    "tile.online": "Hồ sơ trực tuyến — {level}",
    "tile.overdue": "Hồ sơ quá hạn đang xử lý",
    "tile.onTime": "Tỷ lệ giải quyết đúng hạn",
    "tile.coverage": "Trạm viễn thông mất sóng",
    "tile.aqi": "Chất lượng không khí (VN_AQI cao nhất)",
    "level.province": "cấp tỉnh",
    "level.district": "cấp huyện",
    "level.commune": "cấp xã",
    targetAtLeast: "Mục tiêu ≥ {target}",
    targetAtMost: "Mục tiêu ≤ {target}",
    meeting: "{met}/{total} đơn vị đạt",
    worstAt: "Cao nhất tại {area}",
    "status.ok": "Đạt",
    "status.warn": "Gần đạt",
    "status.bad": "Chưa đạt",
    "status.none": "Chưa có số liệu",
    "status.noTarget": "Chưa đặt mục tiêu",
    "aqi.0": "Tốt", "aqi.1": "Trung bình", "aqi.2": "Kém", "aqi.3": "Xấu", "aqi.4": "Rất xấu", "aqi.5": "Nguy hại",
    "source.live": "Đang nhận",
    "source.quiet": "Im lặng",
    "source.unknown": "Chưa rõ",
    lastSeen: "Dữ liệu cuối: {age}",
    rate: "{rate} sự kiện/giây",
    rejected: "{count} bị từ chối",
    "duration.30m": "30 phút", "duration.1h": "1 giờ", "duration.2h": "2 giờ", "duration.4h": "4 giờ",
    "duration.8h": "8 giờ", "duration.1d": "1 ngày", "duration.3d": "3 ngày",
    never: "chưa có",
  },
  en: {
    title: "Intelligent Operations Center",
    otherLanguage: "Tiếng Việt",
    otherLanguageLabel: "Chuyển sang tiếng Việt",
    login: "Operator login",
    logout: "Log out",
    operator: "Operator: {name}",
    live: "Live",
    connecting: "Connecting…",
    stale: "Disconnected",
    locked: "Token needed",
    staleBanner: "The live data stream is down. Figures may be out of date — reconnecting automatically…",
    kpisTitle: "Key indicators",
    alertsTitle: "Alerts",
    areasTitle: "Areas",
    sourcesTitle: "Data sources",
    noAlerts: "No active alerts.",
    noSources: "No subsystem has sent data yet.",
    "firing.other": "{count} firing",
    "pending.other": "{count} pending",
    "acknowledged.other": "{count} acknowledged",
    "silences.one": "{count} silence",
    "silences.other": "{count} silences",
    "alerts.one": "{count} alert",
    "alerts.other": "{count} alerts",
    mapTitle: "Communes",
    worstTitle: "Communes to watch",
    noWorst: "Every commune is normal.",
    "state.pending": "Pending",
    "state.firing": "Firing",
    "state.acknowledged": "Acknowledged",
    "state.silenced": "Silenced",
    "state.resolved": "Resolved",
    "severity.critical": "Critical",
    "severity.warning": "Warning",
    "severity.info": "Info",
    "severity.none": "Normal",
    ackedBy: "Acknowledged by {by} at {at}",
    startedAt: "Started {at} ({age})",
    resolvedAt: "Resolved at {at}",
    value: "Value: {value}",
    ack: "Acknowledge",
    unack: "Unacknowledge",
    silence: "Silence",
    loginTitle: "Operator login",
    tokenLabel: "Operator access token",
    loginSubmit: "Log in",
    viewerTitle: "Wall access token",
    viewerHelp: "This display shows its data only with an access token issued to viewers.",
    viewerTokenLabel: "Viewer access token",
    viewerSubmit: "View",
    cancel: "Cancel",
    tokenInvalid: "This token is not valid.",
    tokenNotOperator: "This is not an operator's token.",
    loggedIn: "Logged in: {name}",
    loggedOut: "Logged out.",
    needLogin: "Log in as an operator to do this.",
    silenceTitle: "Silence alerts",
    silenceMatchers: "For alerts with the labels:",
    duration: "Duration",
    comment: "Reason",
    commentPlaceholder: "e.g. maintenance of site BTN0123",
    silenceSubmit: "Silence",
    acked: "Alert acknowledged.",
    unacked: "Acknowledgement taken back.",
    silenced: "Silenced until {end}.",
    requestFailed: "Could not do it: {error}",
    "tile.online": "Dossiers online — {level}",
    "tile.overdue": "Overdue open dossiers",
    "tile.onTime": "On-time resolution rate",
    "tile.coverage": "Cell sites down",
    "tile.aqi": "Air quality (highest VN_AQI)",
    "level.province": "province",
    "level.district": "district",
    "level.commune": "commune",
    targetAtLeast: "Target ≥ {target}",
    targetAtMost: "Target ≤ {target}",
    meeting: "{met}/{total} units on target",
    worstAt: "Highest in {area}",
    "status.ok": "On target",
    "status.warn": "Near target",
    "status.bad": "Off target",
    "status.none": "No data yet",
    "status.noTarget": "No target set",
    "aqi.0": "Good", "aqi.1": "Moderate", "aqi.2": "Poor", "aqi.3": "Bad", "aqi.4": "Very bad", "aqi.5": "Hazardous",
    "source.live": "Receiving",
    "source.quiet": "Silent",
    "source.unknown": "Unknown",
    lastSeen: "Last event: {age}",
    rate: "{rate} events/s",
    rejected: "{count} rejected",
    "duration.30m": "30 minutes", "duration.1h": "1 hour", "duration.2h": "2 hours", "duration.4h": "4 hours",
    "duration.8h": "8 hours", "duration.1d": "1 day", "duration.3d": "3 days",
    never: "never",
  },
};

/** The language asked for in the URL (`?lang=en`), else the page's own (`<html lang>`), else Vietnamese. */
export function initialLanguage() {
  const asked = new URLSearchParams(location.search).get("lang");
  if (LANGUAGES.includes(asked)) return asked;
  const page = document.documentElement.lang;
  return LANGUAGES.includes(page) ? page : "vi";
}

/** Formatting for one language: `t(key, values)` and the number, time and age formatters. */
export function makeFormatter(lang) {
  const strings = STRINGS[lang] ?? STRINGS.vi;
  const locale = LOCALES[lang] ?? LOCALES.vi;
  const numbers = new Map();
  const time = new Intl.DateTimeFormat(locale, { timeZone: TIME_ZONE, hour: "2-digit", minute: "2-digit",
    second: "2-digit", hour12: false });
  const shortTime = new Intl.DateTimeFormat(locale, { timeZone: TIME_ZONE, hour: "2-digit", minute: "2-digit",
    hour12: false });
  const dateTime = new Intl.DateTimeFormat(locale, { timeZone: TIME_ZONE, day: "2-digit", month: "2-digit",
    hour: "2-digit", minute: "2-digit", hour12: false });
  const longDate = new Intl.DateTimeFormat(locale, { timeZone: TIME_ZONE, weekday: "long", day: "numeric",
    month: "long", year: "numeric" });
  const relative = new Intl.RelativeTimeFormat(locale, { numeric: "auto", style: "long" });
  const plurals = new Intl.PluralRules(locale);
  const dayKey = new Intl.DateTimeFormat("en-CA", { timeZone: TIME_ZONE, year: "numeric", month: "2-digit",
    day: "2-digit" });

  function t(key, values = {}) {
    const text = strings[key] ?? STRINGS.vi[key] ?? key;
    return text.replace(/\{(\w+)\}/g, (_, name) => (name in values ? String(values[name]) : `{${name}}`));
  }

  function number(value, digits = 1) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "—";
    let format = numbers.get(digits);
    if (!format) {
      format = new Intl.NumberFormat(locale, { maximumFractionDigits: digits });
      numbers.set(digits, format);
    }
    return format.format(value);
  }

  /** A count with its noun in the language's plural form: `plural("silences", 1)` -> "1 silence" (the
   *  keys `NAME.one`, `NAME.other`...; Vietnamese has one form). The count is formatted for the locale. */
  function plural(name, count) {
    const key = `${name}.${plurals.select(count)}`;
    return t(key in strings ? key : `${name}.other`, { count: number(count, 0) });
  }

  /** An instant as a clock time, with the date too when it is not today (both in Asia/Ho_Chi_Minh). */
  function when(date, now = new Date()) {
    if (!date) return "—";
    return dayKey.format(date) === dayKey.format(now) ? shortTime.format(date) : dateTime.format(date);
  }

  /** How long ago `date` was: "3 phút trước" / "3 minutes ago". */
  function age(date, now = new Date()) {
    if (!date) return t("never");
    const seconds = Math.round((date.getTime() - now.getTime()) / 1000);
    const magnitude = Math.abs(seconds);
    if (magnitude < 60) return relative.format(magnitude < 10 ? 0 : seconds, "second");
    if (magnitude < 3600) return relative.format(Math.round(seconds / 60), "minute");
    if (magnitude < 86400) return relative.format(Math.round(seconds / 3600), "hour");
    return relative.format(Math.round(seconds / 86400), "day");
  }

  return { lang, locale, t, number, plural, when, age,
    clockTime: (date) => time.format(date),
    clockDate: (date) => longDate.format(date) };
}
