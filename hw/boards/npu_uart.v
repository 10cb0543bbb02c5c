// UART link for the edgegen NPU: 8N1 receiver and transmitter, and a bridge that turns the host
// frames of hw/npu/README.md ("Board link") into npu_top host-port cycles (integers little-endian):
//   'W' addr:u32 len:u32 data[len] -> 'K'      'R' addr:u32 len:u32 -> data[len]
//   'S' -> 'K'                                 'P' limit:u32 -> status:u8 cycles:u32 layers:u32 clock:u64
// 'P' waits while the NPU is busy, at most `limit` cycles; `clock` is this bridge's cycle counter.

module npu_uart_rx #(parameter DIV = 104) (   // DIV = clock cycles per bit
    input  wire       clk,
    input  wire       rst,
    input  wire       rx,
    output reg  [7:0] data,
    output reg        valid                    // one-cycle pulse per received byte
);
    reg [1:0]  sync;
    reg [15:0] count;
    reg [3:0]  bit_i;
    reg        active;
    reg [7:0]  shift;
    always @(posedge clk) begin
        sync <= {sync[0], rx};
        valid <= 1'b0;
        if (rst) begin
            active <= 1'b0;
            sync <= 2'b11;
        end else if (!active) begin
            if (!sync[1]) begin                // start bit: sample mid-bit from here on
                active <= 1'b1;
                count <= DIV / 2;
                bit_i <= 4'd0;
            end
        end else if (count != 0) begin
            count <= count - 1'b1;
        end else begin
            count <= DIV - 1;
            bit_i <= bit_i + 1'b1;
            if (bit_i == 4'd0) begin
                if (sync[1]) active <= 1'b0;   // a glitch, not a start bit
            end else if (bit_i == 4'd9) begin
                active <= 1'b0;
                if (sync[1]) begin             // stop bit present
                    data <= shift;
                    valid <= 1'b1;
                end
            end else begin
                shift <= {sync[1], shift[7:1]};
            end
        end
    end
endmodule

module npu_uart_tx #(parameter DIV = 104) (
    input  wire       clk,
    input  wire       rst,
    input  wire [7:0] data,
    input  wire       send,                    // accepted when ready
    output wire       ready,
    output wire       tx
);
    reg [9:0]  frame;                          // stop, data, start; shifted out LSB first
    reg [3:0]  left;
    reg [15:0] count;
    assign ready = left == 4'd0;
    assign tx = ready ? 1'b1 : frame[0];
    always @(posedge clk) begin
        if (rst) begin
            left <= 4'd0;
        end else if (ready) begin
            if (send) begin
                frame <= {1'b1, data, 1'b0};
                left <= 4'd10;
                count <= DIV - 1;
            end
        end else if (count != 0) begin
            count <= count - 1'b1;
        end else begin
            count <= DIV - 1;
            frame <= {1'b1, frame[9:1]};
            left <= left - 1'b1;
        end
    end
endmodule

module npu_uart_bridge (
    input  wire        clk,
    input  wire        rst,
    input  wire [7:0]  rx_data,
    input  wire        rx_valid,
    output reg  [7:0]  tx_data,
    output reg         tx_send,
    input  wire        tx_ready,
    output reg  [23:0] h_addr,
    output reg  [7:0]  h_wdata,
    output reg         h_we,
    output reg         h_re,
    input  wire [7:0]  h_rdata,
    input  wire        h_rvalid,
    input  wire        busy
);
    localparam CMD = 4'd0, HDR = 4'd1, WDATA = 4'd2, ACK = 4'd3, RREQ = 4'd4, RWAIT = 4'd5, RSEND = 4'd6,
               WAIT = 4'd7, START = 4'd8;
    reg [3:0]  state;
    reg [7:0]  cmd;
    reg [3:0]  hdr_left;
    reg [31:0] addr, left;                     // header bytes shift in from the top of {left, addr}: 'W'/'R'
                                               // addr, len; 'P' limit (in left, counted down while waiting)
    reg [63:0] clock, clock_at;
    reg [4:0]  reply;                          // 'P' reply byte index 0..16
    reg [7:0]  byte_out;
    wire       poll = cmd == "P";
    // 'P' reply: status (0), cycles (4..7), layers (8..11) from the control region, then the clock
    wire [7:0] reply_addr = reply == 5'd0 ? 8'd0 : {3'd0, reply} + 8'd3;

    always @(posedge clk) begin
        clock <= clock + 1'b1;
        h_we <= 1'b0;
        h_re <= 1'b0;
        tx_send <= 1'b0;
        if (rst) begin
            state <= CMD;
            clock <= 64'd0;
        end else case (state)
            CMD: if (rx_valid) begin
                cmd <= rx_data;
                if (rx_data == "W" || rx_data == "R") begin
                    hdr_left <= 4'd8;
                    state <= HDR;
                end else if (rx_data == "P") begin
                    hdr_left <= 4'd4;
                    state <= HDR;
                end else if (rx_data == "S") begin
                    state <= START;
                end
            end
            START: begin                       // write 1 to control byte 0, then acknowledge
                h_addr <= 24'd0;
                h_wdata <= 8'd1;
                h_we <= 1'b1;
                state <= ACK;
            end
            HDR: if (rx_valid) begin
                {left, addr} <= {rx_data, left, addr[31:8]};
                hdr_left <= hdr_left - 1'b1;
                if (hdr_left == 4'd1) begin    // {rx_data, left[31:8]}: the length (or limit) after this shift
                    reply <= 5'd0;
                    if (cmd == "W") state <= ({rx_data, left[31:8]} == 32'd0) ? ACK : WDATA;
                    else if (cmd == "R") state <= ({rx_data, left[31:8]} == 32'd0) ? CMD : RREQ;
                    else state <= WAIT;
                end
            end
            WDATA: if (rx_valid) begin
                h_addr <= addr[23:0];
                h_wdata <= rx_data;
                h_we <= 1'b1;
                addr <= addr + 1'b1;
                left <= left - 1'b1;
                if (left == 32'd1) state <= ACK;
            end
            ACK: if (tx_ready && !tx_send) begin
                tx_data <= "K";
                tx_send <= 1'b1;
                state <= CMD;
            end
            WAIT: begin
                left <= left - 1'b1;
                if (!busy || left == 32'd0) begin
                    clock_at <= clock;
                    state <= RREQ;
                end
            end
            RREQ: begin
                if (poll && reply >= 5'd9) begin
                    byte_out <= clock_at[8*(reply - 5'd9) +: 8];
                    state <= RSEND;
                end else begin
                    h_addr <= poll ? {16'd0, reply_addr} : addr[23:0];
                    h_re <= 1'b1;
                    state <= RWAIT;
                end
            end
            RWAIT: if (h_rvalid) begin
                byte_out <= h_rdata;
                state <= RSEND;
            end
            RSEND: if (tx_ready && !tx_send) begin
                tx_data <= byte_out;
                tx_send <= 1'b1;
                if (poll) begin
                    reply <= reply + 1'b1;
                    state <= (reply == 5'd16) ? CMD : RREQ;
                end else begin
                    addr <= addr + 1'b1;
                    left <= left - 1'b1;
                    state <= (left == 32'd1) ? CMD : RREQ;
                end
            end
            default: state <= CMD;
        endcase
    end
endmodule
