// Type-only: brings the GJS globals (print, printerr, TextDecoder) and the `gi://` module
// declarations into scope. The bundle never imports these packages at run time.
import '@girs/gjs';
import '@girs/gjs/dom';
import '@girs/glib-2.0';
import '@girs/gobject-2.0';
import '@girs/gio-2.0';
import '@girs/gdk-4.0';
import '@girs/pango-1.0';
import '@girs/gtk-4.0';
import '@girs/adw-1';
